// Native 9x9 Sudoku engine: a DPLL solver with constraint propagation (naked singles, hidden singles, locked
// candidates "pointing/claiming" i.e. box-line triads) that counts solutions up to a limit and counts guesses
// (branch decisions) to the first solution, the difficulty measure of the published Sudoku-Extreme `rating`
// (our own solver: counts are comparable in kind, not identical to the published tool's numbers); and a generator
// that hill-climbs unique-solution puzzles toward high guess counts.
//
// Batch functions take and return numpy arrays and release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int N = 81;
constexpr uint16_t ALL = 0x1FF;

struct Tables {
  int units[27][9];
  int cell_units[N][3];
  int peers[N][20];
  Tables() {
    for (int i = 0; i < 9; ++i)
      for (int j = 0; j < 9; ++j) {
        units[i][j] = i * 9 + j;                                            // rows
        units[9 + i][j] = j * 9 + i;                                        // columns
        units[18 + i][j] = (i / 3 * 3 + j / 3) * 9 + (i % 3 * 3 + j % 3);  // boxes
      }
    for (int c = 0; c < N; ++c) {
      int r = c / 9, k = c % 9, b = r / 3 * 3 + k / 3;
      cell_units[c][0] = r;
      cell_units[c][1] = 9 + k;
      cell_units[c][2] = 18 + b;
      int n = 0;
      for (int o = 0; o < N; ++o) {
        if (o == c) continue;
        int orow = o / 9, ocol = o % 9, obox = orow / 3 * 3 + ocol / 3;
        if (orow == r || ocol == k || obox == b) peers[c][n++] = o;
      }
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

  // Removes candidates until a fixed point; false on a contradiction.
  bool propagate() {
    bool changed = true;
    while (changed) {
      changed = false;
      for (int c = 0; c < N; ++c) {  // naked singles
        uint16_t m = cand[c];
        if (!m) return false;
        if (!spread[c] && popcount(m) == 1) {
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
      if (changed) continue;  // the box-line rule only when singles stall: it is the expensive one
      for (int b = 0; b < 9; ++b) {  // locked candidates: box-line triads
        for (int d = 0; d < 9; ++d) {
          uint16_t bit = 1 << d;
          int row = -1, col = -1, n = 0;
          bool one_row = true, one_col = true, placed = false;
          for (int c : T.units[18 + b]) {
            if (!(cand[c] & bit)) continue;
            if (cand[c] == bit) { placed = true; break; }  // the digit is already fixed in this box
            ++n;
            if (row < 0) { row = c / 9; col = c % 9; }
            one_row &= (c / 9 == row);
            one_col &= (c % 9 == col);
          }
          if (placed || n < 2) continue;
          for (int line_kind = 0; line_kind < 2; ++line_kind) {
            if (!(line_kind == 0 ? one_row : one_col)) continue;
            const int* line = T.units[line_kind == 0 ? row : 9 + col];
            for (int i = 0; i < 9; ++i) {
              int c = line[i];
              bool in_box = (c / 27 * 3 + (c % 9) / 3) == b;
              if (!in_box && (cand[c] & bit) && popcount(cand[c]) > 1) {
                cand[c] &= ~bit;
                changed = true;
              }
            }
          }
        }
      }
    }
    return true;
  }

  bool solved() const {
    for (uint16_t m : cand)
      if (popcount(m) != 1) return false;
    return true;
  }
};

struct Search {
  int limit;
  int solutions = 0;
  long long guesses = 0, guesses_to_first = -1;
  std::array<uint16_t, N> first{};
  Rng* rng = nullptr;  // random digit order (generation); deterministic ascending order otherwise

  void run(State s) {
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
    int digits[9], n = 0;
    for (uint16_t m = s.cand[best]; m; m &= m - 1) digits[n++] = lowbit_digit(m);
    if (rng)
      for (int i = n - 1; i > 0; --i) std::swap(digits[i], digits[rng->below(i + 1)]);
    for (int i = 0; i < n && solutions < limit; ++i) {
      ++guesses;
      State next = s;
      next.cand[best] = 1 << digits[i];
      run(next);
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

// (solution count up to limit, guesses to the first solution; -1 when unsolvable) and the first solution.
std::pair<int, long long> solve_one(const uint8_t* grid, int limit, uint8_t* solution, Rng* rng = nullptr) {
  if (!givens_consistent(grid)) return {0, -1};
  Search search{limit};
  search.rng = rng;
  search.run(from_grid(grid));
  if (search.solutions && solution)
    for (int c = 0; c < N; ++c) solution[c] = lowbit_digit(search.first[c]) + 1;
  return {search.solutions, search.guesses_to_first};
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

// Hill-climbing toward more guesses: move one clue to another cell of the solution, keep the change when the
// puzzle stays unique and its guess count does not drop, then drop clues that uniqueness does not need.
void make_hard(Rng& rng, int iterations, uint8_t* puzzle, uint8_t* solution, long long* guesses_out) {
  uint8_t empty[N] = {0};
  solve_one(empty, 1, solution, &rng);  // a random full grid
  uint8_t p[N];
  for (int c = 0; c < N; ++c) p[c] = solution[c];
  auto unique = [&](const uint8_t* g) { return solve_one(g, 2, nullptr).first == 1; };
  auto minimise = [&](uint8_t* g) {
    int order[N];
    for (int c = 0; c < N; ++c) order[c] = c;
    for (int i = N - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    for (int c : order) {
      if (!g[c]) continue;
      uint8_t keep = g[c];
      g[c] = 0;
      if (!unique(g)) g[c] = keep;
    }
  };
  minimise(p);
  long long best = solve_one(p, 1, nullptr).second;
  for (int it = 0; it < iterations; ++it) {
    uint8_t q[N];
    for (int c = 0; c < N; ++c) q[c] = p[c];
    int given[N], blank[N], ng = 0, nb = 0;
    for (int c = 0; c < N; ++c) (q[c] ? given[ng++] : blank[nb++]) = c;
    if (!ng || !nb) break;
    q[given[rng.below(ng)]] = 0;
    int add = blank[rng.below(nb)];
    q[add] = solution[add];
    if (!unique(q)) continue;
    minimise(q);
    long long g = solve_one(q, 1, nullptr).second;
    if (g >= best) {
      best = g;
      for (int c = 0; c < N; ++c) p[c] = q[c];
    }
  }
  for (int c = 0; c < N; ++c) puzzle[c] = p[c];
  *guesses_out = best;
}

}  // namespace

static py::tuple solve_batch(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> puzzles, int limit, int threads) {
  if (puzzles.ndim() != 2 || puzzles.shape(1) != N) throw std::invalid_argument("solve_batch: puzzles must be (count, 81) digits 0-9");
  if (limit < 1 || threads < 1) throw std::invalid_argument("solve_batch: limit and threads must be >= 1");
  int count = static_cast<int>(puzzles.shape(0));
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

static py::tuple generate_hard(int count, uint64_t seed, int iterations, int threads) {
  if (count < 0 || iterations < 0 || threads < 1) throw std::invalid_argument("generate_hard: bad arguments");
  py::array_t<uint8_t> puzzles({count, N}), solutions({count, N});
  py::array_t<int64_t> guesses(count);
  uint8_t* p = puzzles.mutable_data();
  uint8_t* s = solutions.mutable_data();
  int64_t* g = guesses.mutable_data();
  {
    py::gil_scoped_release release;
    parallel_for(count, threads, [&](int i) {
      Rng rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ULL + 7);
      long long best;
      make_hard(rng, iterations, p + i * N, s + i * N, &best);
      g[i] = best;
    });
  }
  return py::make_tuple(puzzles, solutions, guesses);
}

PYBIND11_MODULE(_sudoku, m) {
  m.doc() = "Native 9x9 Sudoku engine: DPLL with singles and box-line triads, guess counting, hard generation";
  m.def("solve_batch", &solve_batch, py::arg("puzzles"), py::arg("limit") = 2, py::arg("threads") = 1,
        "(solutions, solution counts up to limit, guesses to the first solution (-1 if none))");
  m.def("generate_hard", &generate_hard, py::arg("count"), py::arg("seed"), py::arg("iterations") = 300,
        py::arg("threads") = 1, "(puzzles, solutions, guesses): unique-solution puzzles hill-climbed toward many guesses");
}
