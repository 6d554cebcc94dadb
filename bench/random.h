// A seeded random source whose sequences are the same on every platform and library version:
// std::mt19937_64 (its output is fixed by the standard) with the distributions written here
// (the standard library's and Abseil's distributions may change between implementations).
// One Rng per thread; not thread-safe.
#pragma once

#include <cstdint>
#include <random>

namespace tessera::bench {

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  // Uniform in [0, 1), 53 random bits.
  double Uniform();
  // Uniform integer in [lo, hi] (lo <= hi).
  int64_t UniformInt(int64_t lo, int64_t hi);
  // Standard normal (Box-Muller; one value per call).
  double Normal();
  // Exponential with mean 1/rate (rate > 0).
  double Exponential(double rate);
  // Gamma with `shape` > 0 and `scale` > 0 (Marsaglia-Tsang; shape < 1 boosted by U^(1/shape)).
  double Gamma(double shape, double scale);

  uint64_t Next() { return engine_(); }

 private:
  std::mt19937_64 engine_;
};

// A well-mixed 64-bit hash of `x` (splitmix64's finaliser): stable ids from stable inputs.
uint64_t Mix64(uint64_t x);

}  // namespace tessera::bench
