// Maze-Hard generator (after Lehnert et al. 2024): square grids with a uniformly random number of walls in
// [min_walls, max_walls] at uniformly random cells, start and goal on distinct open cells, kept when the
// 4-neighbour shortest path from start to goal has more than `min_path` moves (rejection sampling: such mazes are
// rare, so this runs millions of BFS per minute). Labels mark one shortest path with 'o' (start and goal keep
// 'S' and 'G'); ties are broken by walking from the start to the neighbour one step closer to the goal in the
// fixed order up, down, left, right.
//
// Cells are returned as token ids of the published charset "# SGo": '#'=1, ' '=2, 'S'=3, 'G'=4, 'o'=5.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

constexpr uint8_t WALL = 1, OPEN = 2, START = 3, GOAL = 4, PATH = 5;

// xoshiro256** (fast, 64-bit), seeded through splitmix64.
struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed) {
    for (auto& v : s) {
      seed += 0x9E3779B97F4A7C15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      v = z ^ (z >> 31);
    }
  }
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next() {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return result;
  }
  // uniform integer in [lo, hi] by multiply-shift (bias below 2^-22 for ranges up to 1000: negligible here)
  int between(int lo, int hi) { return lo + static_cast<int>(((next() >> 32) * static_cast<uint64_t>(hi - lo + 1)) >> 32); }
};

struct Maze {
  std::vector<uint8_t> input, label;
  int walls = 0, path_moves = 0;
};

// Shortest-path distances from `goal` (BFS); -1 for walls and unreachable cells. Stops once `start` is reached.
static int bfs(const std::vector<uint8_t>& grid, int n, int start, int goal, std::vector<int>& dist, std::vector<int>& queue) {
  std::fill(dist.begin(), dist.end(), -1);
  int head = 0, tail = 0;
  dist[goal] = 0;
  queue[tail++] = goal;
  while (head < tail) {
    int cell = queue[head++];
    if (cell == start) return dist[cell];
    int r = cell / n, c = cell % n;
    const int nbr[4] = {r > 0 ? cell - n : -1, r < n - 1 ? cell + n : -1, c > 0 ? cell - 1 : -1, c < n - 1 ? cell + 1 : -1};
    for (int next : nbr) {
      if (next >= 0 && grid[next] != WALL && dist[next] < 0) {
        dist[next] = dist[cell] + 1;
        queue[tail++] = next;
      }
    }
  }
  return -1;
}

// Bit-row coordinates of every cell (row + 1, 1 << column), looked up rather than divided: the grid side is a
// run-time value, and two integer divisions per wall would cost more than the whole search.
struct CellBits {
  std::vector<uint8_t> row;
  std::vector<uint32_t> bit;
  explicit CellBits(int n) : row(n * n), bit(n * n) {
    for (int cell = 0; cell < n * n; ++cell) {
      row[cell] = static_cast<uint8_t>(cell / n + 1);
      bit[cell] = n <= 32 ? 1u << (cell % n) : 0u;
    }
  }
};

// Moves from goal to start for grids of at most 32 columns, on bit rows: bit c of open[r + 1] is set when cell
// (r, c) is open; open[0] and open[n + 1] stay empty. One BFS level is a few word operations per row of the
// frontier's band, about twice as fast as the cell queue for the rejection test. -1 when unreachable.
static int bitset_moves(const uint32_t* open, int n, const CellBits& bits, int start, int goal) {
  uint32_t buf_a[34] = {0}, buf_b[34] = {0}, seen[34] = {0};
  uint32_t *frontier = buf_a, *next = buf_b;  // both stay zero outside the rows they were last written in
  const int start_row = bits.row[start];
  const uint32_t start_bit = bits.bit[start];
  int lo = bits.row[goal], hi = lo;  // rows that hold frontier cells
  frontier[lo] = seen[lo] = bits.bit[goal];
  for (int moves = 1;; ++moves) {
    const int a = lo > 1 ? lo - 1 : 1, b = hi < n ? hi + 1 : n;
    int new_lo = n + 1, new_hi = 0;
    for (int r = a; r <= b; ++r) {
      const uint32_t f = frontier[r];
      const uint32_t reached = (f << 1 | f >> 1 | frontier[r - 1] | frontier[r + 1]) & open[r] & ~seen[r];
      next[r] = reached;
      seen[r] |= reached;
      if (reached) {
        new_lo = r < new_lo ? r : new_lo;
        new_hi = r;
      }
    }
    if (next[start_row] & start_bit) return moves;
    if (new_hi == 0) return -1;
    for (int r = a; r <= b; ++r) frontier[r] = 0;
    std::swap(frontier, next);
    lo = new_lo;
    hi = new_hi;
  }
}

static bool attempt(Rng& rng, int n, int min_walls, int max_walls, int min_path, Maze& out, const CellBits& bits,
                    std::vector<int>& cells, std::vector<int>& dist, std::vector<int>& queue) {
  const int total = n * n;
  int walls = rng.between(min_walls, max_walls);
  // partial Fisher-Yates: cells[0..walls) are walls, cells[walls], cells[walls+1] are start and goal
  for (int i = 0; i < walls + 2; ++i) std::swap(cells[i], cells[rng.between(i, total - 1)]);
  int start = cells[walls], goal = cells[walls + 1];
  if (n <= 32) {  // the rejection test on bit rows; the cell-queue BFS below then runs for kept mazes only
    uint32_t open[34] = {0};
    const uint32_t row_mask = n == 32 ? 0xFFFFFFFFu : (1u << n) - 1;
    for (int r = 1; r <= n; ++r) open[r] = row_mask;
    for (int i = 0; i < walls; ++i) open[bits.row[cells[i]]] &= ~bits.bit[cells[i]];
    if (bitset_moves(open, n, bits, start, goal) <= min_path) return false;
  }
  std::vector<uint8_t>& grid = out.input;
  grid.assign(total, OPEN);
  for (int i = 0; i < walls; ++i) grid[cells[i]] = WALL;
  int moves = bfs(grid, n, start, goal, dist, queue);
  if (moves <= min_path) return false;
  grid[start] = START;
  grid[goal] = GOAL;
  out.label = grid;
  int cell = start;
  while (cell != goal) {
    int r = cell / n, c = cell % n;
    const int nbr[4] = {r > 0 ? cell - n : -1, r < n - 1 ? cell + n : -1, c > 0 ? cell - 1 : -1, c < n - 1 ? cell + 1 : -1};
    for (int next : nbr) {
      if (next >= 0 && dist[next] == dist[cell] - 1) {
        cell = next;
        break;
      }
    }
    if (cell != goal) out.label[cell] = PATH;
  }
  out.walls = walls;
  out.path_moves = moves;
  return true;
}

}  // namespace

// Generates mazes number first_index .. first_index+count-1 with `threads` workers. Maze i comes from its own RNG
// stream (seed, i), so results depend on neither the thread count nor how a long run is split into calls. Returns (inputs uint8 (count, n*n), labels uint8 (count, n*n), walls int32, path moves
// int32, attempts int64).
static py::tuple generate(int count, uint64_t seed, int n, int min_walls, int max_walls, int min_path, int threads,
                          uint64_t first_index) {
  if (count < 0 || n < 2 || min_walls < 0 || max_walls < min_walls || max_walls > n * n - 2 || threads < 1)
    throw std::invalid_argument("maze.generate: bad arguments (count >= 0, n >= 2, 0 <= min_walls <= max_walls <= n*n-2, threads >= 1)");
  std::vector<Maze> mazes(count);
  std::vector<long long> attempts(threads, 0);
  {
    py::gil_scoped_release release;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        std::vector<int> cells(n * n), dist(n * n), queue(n * n);
        const CellBits bits(n);
        for (int i = t; i < count; i += threads) {
          for (int j = 0; j < n * n; ++j) cells[j] = j;  // a fresh cell order: maze i depends on (seed, i) only
          Rng rng(seed * 0x9E3779B97F4A7C15ULL + (first_index + static_cast<uint64_t>(i)) * 0xD1B54A32D192ED03ULL + 1);
          while (!attempt(rng, n, min_walls, max_walls, min_path, mazes[i], bits, cells, dist, queue)) ++attempts[t];
          ++attempts[t];
        }
      });
    }
    for (auto& th : pool) th.join();
  }
  py::array_t<uint8_t> inputs({count, n * n}), labels({count, n * n});
  py::array_t<int32_t> walls(count), moves(count);
  auto in = inputs.mutable_unchecked<2>();
  auto lab = labels.mutable_unchecked<2>();
  auto w = walls.mutable_unchecked<1>();
  auto m = moves.mutable_unchecked<1>();
  for (int i = 0; i < count; ++i) {
    for (int j = 0; j < n * n; ++j) {
      in(i, j) = mazes[i].input[j];
      lab(i, j) = mazes[i].label[j];
    }
    w(i) = mazes[i].walls;
    m(i) = mazes[i].path_moves;
  }
  long long total = 0;
  for (long long a : attempts) total += a;
  return py::make_tuple(inputs, labels, walls, moves, total);
}

// The rejection test's search on given mazes (count, n*n) tokens with one START and one GOAL each: shortest moves
// or -1, so tests can hold it against an independent BFS (unreachable goals included).
static py::array_t<int32_t> shortest_moves(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> grids, int n) {
  if (grids.ndim() != 2 || grids.shape(1) != n * n || n < 2 || n > 32)
    throw std::invalid_argument("maze.shortest_moves: expected (count, n*n) tokens with 2 <= n <= 32");
  const auto g = grids.unchecked<2>();
  const CellBits bits(n);
  py::array_t<int32_t> out(grids.shape(0));
  auto o = out.mutable_unchecked<1>();
  for (py::ssize_t i = 0; i < grids.shape(0); ++i) {
    uint32_t open[34] = {0};
    int start = -1, goal = -1;
    for (int cell = 0; cell < n * n; ++cell) {
      if (g(i, cell) != WALL) open[bits.row[cell]] |= bits.bit[cell];
      if (g(i, cell) == START) start = cell;
      if (g(i, cell) == GOAL) goal = cell;
    }
    if (start < 0 || goal < 0) throw std::invalid_argument("maze.shortest_moves: a maze without START or GOAL");
    o(i) = bitset_moves(open, n, bits, start, goal);
  }
  return out;
}

PYBIND11_MODULE(_maze, m) {
  m.doc() = "Native Maze-Hard generator (rejection sampling with BFS)";
  m.def("generate", &generate, py::arg("count"), py::arg("seed"), py::arg("n") = 30, py::arg("min_walls") = 270,
        py::arg("max_walls") = 450, py::arg("min_path") = 110, py::arg("threads") = 1, py::arg("first_index") = 0);
  m.def("shortest_moves", &shortest_moves, py::arg("grids"), py::arg("n") = 30);
}
