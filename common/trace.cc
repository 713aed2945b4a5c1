#include "common/trace.h"

#include <random>

namespace pp {
namespace {

bool Hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string RandomHex(size_t n) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* digits = "0123456789abcdef";
  std::string out;
  while (out.size() < n) {
    uint64_t r = rng();
    for (int i = 0; i < 16 && out.size() < n; ++i, r >>= 4) out += digits[r & 15];
  }
  return out;
}

}  // namespace

bool ValidTraceparent(std::string_view tp) {
  // version 00 only; all-zero trace or span ids are invalid (W3C §3.2.2).
  if (tp.size() != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return false;
  auto version = tp.substr(0, 2), trace = tp.substr(3, 32), span = tp.substr(36, 16),
       flags = tp.substr(53, 2);
  return version == "00" && Hex(trace) && Hex(span) && Hex(flags) &&
         trace.find_first_not_of('0') != std::string_view::npos &&
         span.find_first_not_of('0') != std::string_view::npos;
}

std::string NewTraceparent() { return "00-" + RandomHex(32) + "-" + RandomHex(16) + "-01"; }

std::string ChildTraceparent(std::string_view parent) {
  if (!ValidTraceparent(parent)) return NewTraceparent();
  return "00-" + std::string(parent.substr(3, 32)) + "-" + RandomHex(16) + "-" +
         std::string(parent.substr(53, 2));
}

std::string TraceId(std::string_view tp) {
  return ValidTraceparent(tp) ? std::string(tp.substr(3, 32)) : std::string();
}

}  // namespace pp
