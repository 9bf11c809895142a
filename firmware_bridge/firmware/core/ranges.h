// A fixed-size set of byte ranges [start, end): which parts of a transfer the device holds.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton {

template <size_t N>
class RangeSet {
 public:
  void clear() { n_ = 0; }
  // false when the range would need more than N disjoint ranges (nothing is changed then).
  bool add(uint32_t start, uint32_t end) {
    if (end <= start) return true;
    size_t i = 0;
    while (i < n_ && e_[i] < start) ++i;  // first range that ends at or after start
    size_t j = i;
    while (j < n_ && s_[j] <= end) ++j;   // ranges [i, j) touch [start, end)
    if (i < j) {
      if (s_[i] < start) start = s_[i];
      if (e_[j - 1] > end) end = e_[j - 1];
    } else if (n_ == N) {
      return false;
    }
    // Replace ranges [i, j) by one.
    const size_t removed = j - i;
    if (removed == 0) {
      for (size_t k = n_; k > i; --k) { s_[k] = s_[k - 1]; e_[k] = e_[k - 1]; }
      ++n_;
    } else if (removed > 1) {
      for (size_t k = j; k < n_; ++k) { s_[k - removed + 1] = s_[k]; e_[k - removed + 1] = e_[k]; }
      n_ -= removed - 1;
    }
    s_[i] = start;
    e_[i] = end;
    return true;
  }
  // The end of the range that starts at 0 (0 when none).
  uint32_t prefix() const { return (n_ > 0 && s_[0] == 0) ? e_[0] : 0; }
  // First offset in [0, end) not held; end when all are.
  uint32_t first_gap(uint32_t end) const {
    const uint32_t p = prefix();
    return p < end ? p : end;
  }
  bool complete(uint32_t end) const { return first_gap(end) >= end; }

 private:
  uint32_t s_[N + 1] = {};
  uint32_t e_[N + 1] = {};
  size_t n_ = 0;
};

}  // namespace lepton
