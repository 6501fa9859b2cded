// Native 9x9 Sudoku engine (module trm_fast._sudoku).
//
// Solver: DPLL with propagation by naked singles, hidden singles and locked candidates (box/line intersections,
// both directions), branching on the cell with fewest candidates (first in row-major order). Guesses are counted
// as tdoku counts them (the published Sudoku-Extreme `rating`): one binary decision asserts the lowest remaining
// digit (+1 guess); if the search goes on the digit is negated for free, and if the cell still has a choice after
// propagation it is branched again (+1). The count reported is the number of guesses made until the first
// solution. trm_fast/data/sudoku.py (_Rater) is the line-by-line reference of this algorithm: same solutions,
// counts and guess counts. Propagation rules are monotone, so the fixed point does not depend on their order.
//
// Also: canonical forms of solved grids under the symmetry group (see canonical_form in sudoku.py), and a
// generator that hill-climbs unique-solution puzzles toward a target guess count. Batch functions take and
// return numpy arrays, release the GIL and split the work over threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int N = 81;
constexpr uint16_t ALL = 0x1FF;

struct Intersection {
  int common[3], box_rest[6], line_rest[6];
};

struct Tables {
  int units[27][9];
  int peers[N][20];
  Intersection inter[54];
  std::vector<std::array<uint8_t, 9>> column_orders;  // the 1296 stack/column permutations
  Tables() {
    for (int i = 0; i < 9; ++i)
      for (int j = 0; j < 9; ++j) {
        units[i][j] = i * 9 + j;                                            // rows
        units[9 + i][j] = j * 9 + i;                                        // columns
        units[18 + i][j] = (i / 3 * 3 + j / 3) * 9 + (i % 3 * 3 + j % 3);  // boxes
      }
    for (int c = 0; c < N; ++c) {
      int r = c / 9, k = c % 9, b = r / 3 * 3 + k / 3, n = 0;
      for (int o = 0; o < N; ++o) {
        if (o == c) continue;
        int orow = o / 9, ocol = o % 9, obox = orow / 3 * 3 + ocol / 3;
        if (orow == r || ocol == k || obox == b) peers[c][n++] = o;
      }
    }
    int n = 0;
    for (int b = 0; b < 9; ++b)
      for (int line = 0; line < 18; ++line) {
        const int* box = units[18 + b];
        const int* ln = units[line];
        int nc = 0, nb = 0, nl = 0;
        Intersection x{};
        for (int i = 0; i < 9; ++i) {
          bool on_line = std::find(ln, ln + 9, box[i]) != ln + 9;
          if (on_line) x.common[nc++] = box[i]; else if (nb < 6) x.box_rest[nb++] = box[i];
        }
        if (nc != 3) continue;
        for (int i = 0; i < 9; ++i)
          if (std::find(box, box + 9, ln[i]) == box + 9) x.line_rest[nl++] = ln[i];
        inter[n++] = x;
      }
    int perm[3] = {0, 1, 2};
    std::vector<std::array<int, 3>> perms;
    do perms.push_back({perm[0], perm[1], perm[2]}); while (std::next_permutation(perm, perm + 3));
    for (auto& outer : perms)
      for (auto& a : perms)
        for (auto& b : perms)
          for (auto& c : perms) {
            const std::array<int, 3>* inner[3] = {&a, &b, &c};
            std::array<uint8_t, 9> order;
            for (int g = 0; g < 3; ++g)
              for (int i = 0; i < 3; ++i) order[g * 3 + i] = static_cast<uint8_t>(outer[g] * 3 + (*inner[g])[i]);
            column_orders.push_back(order);
          }
  }
};
const Tables T;

inline int popcount(uint16_t x) { return __builtin_popcount(x); }
inline int lowbit_digit(uint16_t x) { return __builtin_ctz(x); }

struct Rng {  // splitmix64
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  int below(int n) { return static_cast<int>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32); }
};

struct State {
  std::array<uint16_t, N> cand;
  std::array<uint8_t, N> spread{};  // 1 once a fixed cell's digit has been removed from its peers

  // Eliminates until nothing changes; false on a contradiction.
  bool propagate() {
    while (true) {
      bool changed = false;
      int fixed = 0;
      for (int c = 0; c < N; ++c) {  // naked singles
        uint16_t m = cand[c];
        if (!m) return false;
        if (!(m & (m - 1))) ++fixed;
        if (!spread[c] && !(m & (m - 1))) {
          spread[c] = 1;
          for (int p : T.peers[c]) {
            if (cand[p] & m) {
              cand[p] &= ~m;
              if (!cand[p]) return false;
              changed = true;
            }
          }
        }
      }
      if (fixed == N && !changed) return true;  // solved (every digit spread without conflict): nothing to find
      for (int u = 0; u < 27; ++u) {  // hidden singles: digits with exactly one place in the unit
        uint16_t once = 0, twice = 0;
        for (int c : T.units[u]) {
          twice |= once & cand[c];
          once |= cand[c];
        }
        if (once != ALL) return false;  // a digit has no place left
        for (uint16_t lone = once & ~twice; lone; lone &= lone - 1) {
          uint16_t bit = lone & -lone;
          for (int c : T.units[u])
            if ((cand[c] & bit) && cand[c] != bit) { cand[c] = bit; changed = true; }
        }
      }
      if (changed) continue;  // locked candidates only when singles stall: they are the expensive rule
      for (const Intersection& x : T.inter) {
        uint16_t inside = cand[x.common[0]] | cand[x.common[1]] | cand[x.common[2]], in_box = 0, in_line = 0;
        for (int i = 0; i < 6; ++i) { in_box |= cand[x.box_rest[i]]; in_line |= cand[x.line_rest[i]]; }
        // digits the box can place only on this line leave the rest of the line, and vice versa
        for (int side = 0; side < 2; ++side) {
          uint16_t only = inside & ~(side == 0 ? in_box : in_line);
          if (!only) continue;
          const int* rest = side == 0 ? x.line_rest : x.box_rest;
          for (int i = 0; i < 6; ++i) {
            uint16_t& m = cand[rest[i]];
            if (m & only) {
              m &= ~only;
              if (!m) return false;
              changed = true;
            }
          }
        }
      }
      if (!changed) return true;
    }
  }
};

struct Search {
  int limit;
  int solutions = 0;
  long long guesses = 0, guesses_to_first = -1;
  std::array<uint16_t, N> first{};
  Rng* rng = nullptr;  // random digit choice (random full grids); lowest digit otherwise

  void run(State& s) {
    if (solutions >= limit || !s.propagate()) return;
    int best = -1, best_n = 10;
    for (int c = 0; c < N; ++c) {
      int n = popcount(s.cand[c]);
      if (n > 1 && n < best_n) { best = c; best_n = n; if (n == 2) break; }
    }
    if (best < 0) {
      if (solutions == 0) { first = s.cand; guesses_to_first = guesses; }
      ++solutions;
      return;
    }
    branch(s, best);
  }

  void branch(State& s, int cell) {
    while (true) {
      uint16_t m = s.cand[cell], bit = m & -m;
      if (rng) {  // a random candidate instead of the lowest
        int k = rng->below(popcount(m));
        for (int i = 0; i < k; ++i) m &= m - 1;
        bit = m & -m;
      }
      ++guesses;  // assert the digit
      State child = s;
      child.cand[cell] = bit;
      run(child);
      if (solutions >= limit) return;
      s.cand[cell] &= ~bit;  // its negation is free
      if (!s.propagate()) return;
      if (popcount(s.cand[cell]) == 1) { run(s); return; }
      // still a choice: branch on the same cell again
    }
  }
};

State from_grid(const uint8_t* grid) {
  State s;
  for (int c = 0; c < N; ++c) s.cand[c] = grid[c] ? static_cast<uint16_t>(1 << (grid[c] - 1)) : ALL;
  return s;
}

bool givens_consistent(const uint8_t* grid) {
  for (int c = 0; c < N; ++c) {
    if (grid[c] > 9) return false;
    if (!grid[c]) continue;
    for (int p : T.peers[c])
      if (grid[p] == grid[c]) return false;
  }
  return true;
}

// (solution count up to limit, guesses until the first solution; -1 when unsolvable) and the first solution.
std::pair<int, long long> solve_one(const uint8_t* grid, int limit, uint8_t* solution, Rng* rng = nullptr) {
  if (!givens_consistent(grid)) return {0, -1};
  Search search{limit};
  search.rng = rng;
  State s = from_grid(grid);
  search.run(s);
  if (search.solutions && solution)
    for (int c = 0; c < N; ++c) solution[c] = lowbit_digit(search.first[c]) + 1;
  return {search.solutions, search.guesses_to_first};
}

// Canonical form of a solved grid (see canonical_form in sudoku.py): relabel so the first row is 1..9, then the
// smallest row-major grid over transposition x first-row source x column order, the other rows forced by sorting.
void canonical(const uint8_t* grid, uint8_t* out) {
  uint32_t best[8];
  bool have = false;
  uint8_t g[N];
  for (int t = 0; t < 2; ++t) {
    for (int c = 0; c < N; ++c) g[c] = t ? grid[(c % 9) * 9 + c / 9] : grid[c];
    for (const auto& order : T.column_orders) {
      for (int first = 0; first < 9; ++first) {
        uint8_t relabel[10];
        for (int j = 0; j < 9; ++j) relabel[g[first * 9 + order[j]]] = static_cast<uint8_t>(j + 1);
        uint32_t keys[9];
        for (int r = 0; r < 9; ++r) {
          uint32_t k = 0;
          for (int j = 0; j < 9; ++j) k = k * 10 + relabel[g[r * 9 + order[j]]];
          keys[r] = k;
        }
        uint32_t cand[8];
        int band = first / 3, n = 0;
        for (int r = band * 3; r < band * 3 + 3; ++r)
          if (r != first) cand[n++] = keys[r];
        if (cand[0] > cand[1]) std::swap(cand[0], cand[1]);
        uint32_t others[2][3];
        for (int b = 0, k = 0; b < 3; ++b) {
          if (b == band) continue;
          std::copy(keys + b * 3, keys + b * 3 + 3, others[k]);
          std::sort(others[k], others[k] + 3);
          ++k;
        }
        int lo = others[0][0] < others[1][0] ? 0 : 1;
        std::copy(others[lo], others[lo] + 3, cand + 2);
        std::copy(others[1 - lo], others[1 - lo] + 3, cand + 5);
        if (!have || std::lexicographical_compare(cand, cand + 8, best, best + 8)) {
          std::copy(cand, cand + 8, best);
          have = true;
        }
      }
    }
  }
  for (int j = 0; j < 9; ++j) out[j] = static_cast<uint8_t>(j + 1);
  for (int r = 0; r < 8; ++r)
    for (int j = 8, k = best[r]; j >= 0; --j, k /= 10) out[(r + 1) * 9 + j] = static_cast<uint8_t>(k % 10);
}

template <typename F>
void parallel_for(int count, int threads, F fn) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = t; i < count; i += threads) fn(i);
    });
  for (auto& th : pool) th.join();
}

// Search for hard puzzles (simulated annealing on the guess count): from a random full grid and a minimal unique
// puzzle, a move takes one clue to another cell of the solution and, half the time, removes one more clue; one
// limit-2 solve tells uniqueness and the guess count together. Unique moves that do not lower the count are kept,
// lower ones with probability exp(-drop / temperature); the hardest puzzle seen is returned (minimised when
// that does not lower its count). Stops after
// `iterations` moves or once a puzzle reaches `target` guesses.
void make_hard(Rng& rng, int iterations, long long target, double temperature, uint8_t* puzzle, uint8_t* solution, long long* guesses_out) {
  uint8_t empty[N] = {0};
  solve_one(empty, 1, solution, &rng);  // a random full grid
  auto minimise = [&](uint8_t* g) {
    int order[N];
    for (int c = 0; c < N; ++c) order[c] = c;
    for (int i = N - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    for (int c : order) {
      if (!g[c]) continue;
      uint8_t keep = g[c];
      g[c] = 0;
      if (solve_one(g, 2, nullptr).first != 1) g[c] = keep;
    }
  };
  uint8_t cur[N], best[N];
  for (int c = 0; c < N; ++c) cur[c] = solution[c];
  minimise(cur);
  long long cur_g = solve_one(cur, 1, nullptr).second, best_g = cur_g;
  std::copy(cur, cur + N, best);
  for (int it = 0; it < iterations && best_g < target; ++it) {
    uint8_t q[N];
    std::copy(cur, cur + N, q);
    int given[N], blank[N], ng = 0, nb = 0;
    for (int c = 0; c < N; ++c) (q[c] ? given[ng++] : blank[nb++]) = c;
    if (ng < 2 || !nb) break;
    int drop = rng.below(ng);
    q[given[drop]] = 0;
    int add = blank[rng.below(nb)];
    q[add] = solution[add];
    if (rng.below(2)) {  // and one clue fewer
      int other = given[rng.below(ng)];
      if (other != given[drop]) q[other] = 0;
    }
    auto [n, g] = solve_one(q, 2, nullptr);
    if (n != 1) continue;
    double accept = g >= cur_g ? 1.0 : (temperature > 0 ? std::exp(static_cast<double>(g - cur_g) / temperature) : 0.0);
    if (static_cast<double>(rng.next() >> 11) * 0x1.0p-53 >= accept) continue;
    std::copy(q, q + N, cur);
    cur_g = g;
    if (g > best_g) { best_g = g; std::copy(q, q + N, best); }
  }
  uint8_t minimal[N];  // without the clues uniqueness does not need, unless that makes it easier
  std::copy(best, best + N, minimal);
  minimise(minimal);
  long long minimal_g = solve_one(minimal, 1, nullptr).second;
  if (minimal_g >= best_g) { std::copy(minimal, minimal + N, best); best_g = minimal_g; }
  for (int c = 0; c < N; ++c) puzzle[c] = best[c];
  *guesses_out = best_g;
}

using Grids = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

int check_grids(const Grids& grids, const char* fn) {
  if (grids.ndim() != 2 || grids.shape(1) != N)
    throw std::invalid_argument(std::string(fn) + ": grids must have shape (count, 81) with digits 0-9");
  return static_cast<int>(grids.shape(0));
}

}  // namespace

static py::tuple solve_batch(Grids puzzles, int limit, int threads) {
  int count = check_grids(puzzles, "solve_batch");
  if (limit < 1 || threads < 1) throw std::invalid_argument("solve_batch: limit and threads must be >= 1");
  py::array_t<uint8_t> solutions({count, N});
  py::array_t<int32_t> counts(count);
  py::array_t<int64_t> guesses(count);
  const uint8_t* in = puzzles.data();
  uint8_t* sol = solutions.mutable_data();
  int32_t* cnt = counts.mutable_data();
  int64_t* gs = guesses.mutable_data();
  {
    py::gil_scoped_release release;
    parallel_for(count, threads, [&](int i) {
      std::fill(sol + i * N, sol + (i + 1) * N, 0);
      auto [n, g] = solve_one(in + i * N, limit, sol + i * N);
      cnt[i] = n;
      gs[i] = g;
    });
  }
  return py::make_tuple(solutions, counts, guesses);
}

static py::array_t<uint8_t> canonical_batch(Grids grids, int threads) {
  int count = check_grids(grids, "canonical_batch");
  if (threads < 1) throw std::invalid_argument("canonical_batch: threads must be >= 1");
  const uint8_t* in = grids.data();
  for (int i = 0; i < count; ++i) {  // solved grids only: every row a permutation of 1..9
    for (int r = 0; r < 9; ++r) {
      uint16_t seen = 0;
      for (int j = 0; j < 9; ++j) {
        uint8_t d = in[i * N + r * 9 + j];
        if (d >= 1 && d <= 9) seen |= 1 << (d - 1);
      }
      if (seen != ALL) throw std::invalid_argument("canonical_batch: grid " + std::to_string(i) + " is not a solved grid");
    }
  }
  py::array_t<uint8_t> out({count, N});
  uint8_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    parallel_for(count, threads, [&](int i) { canonical(in + i * N, o + i * N); });
  }
  return out;
}

static py::tuple generate_hard(int count, uint64_t seed, int iterations, int threads,
                               py::array_t<int64_t, py::array::c_style | py::array::forcecast> targets,
                               double temperature) {
  if (count < 0 || iterations < 0 || threads < 1) throw std::invalid_argument("generate_hard: bad arguments");
  if (targets.size() != 0 && targets.size() != count)
    throw std::invalid_argument("generate_hard: targets must be empty or hold one guess count per puzzle");
  py::array_t<uint8_t> puzzles({count, N}), solutions({count, N});
  py::array_t<int64_t> guesses(count);
  uint8_t* p = puzzles.mutable_data();
  uint8_t* s = solutions.mutable_data();
  int64_t* g = guesses.mutable_data();
  const int64_t* tg = targets.size() ? targets.data() : nullptr;
  {
    py::gil_scoped_release release;
    parallel_for(count, threads, [&](int i) {
      Rng rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ULL + 7);
      long long best;
      make_hard(rng, iterations, tg ? tg[i] : INT64_MAX, temperature, p + i * N, s + i * N, &best);
      g[i] = best;
    });
  }
  return py::make_tuple(puzzles, solutions, guesses);
}

PYBIND11_MODULE(_sudoku, m) {
  m.doc() = "Native 9x9 Sudoku engine: DPLL with singles and locked candidates, tdoku-style guess counting, "
            "canonical forms, hard-puzzle generation";
  m.def("solve_batch", &solve_batch, py::arg("puzzles"), py::arg("limit") = 2, py::arg("threads") = 1,
        "(solutions, solution counts up to limit, guesses until the first solution (-1 if none))");
  m.def("canonical_batch", &canonical_batch, py::arg("grids"), py::arg("threads") = 1,
        "canonical forms (count, 81) of solved grids under the Sudoku symmetry group");
  m.def("generate_hard", &generate_hard, py::arg("count"), py::arg("seed"), py::arg("iterations") = 300,
        py::arg("threads") = 1, py::arg("targets") = py::array_t<int64_t>(0), py::arg("temperature") = 0.0,
        "(puzzles, solutions, guesses): unique-solution puzzles hill-climbed toward a guess count per puzzle");
}
