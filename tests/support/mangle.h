// Random damage to test input: a valid message or request body, changed the
// ways a broken or hostile sender would change it. Every change comes from
// the caller's seeded generator, so a failing case replays exactly.
#pragma once

#include <random>
#include <string>

namespace pp::test {

// One change to the bytes: a bit flipped, the end cut off, a piece cut out
// or repeated, a JSON token or a random byte inserted, or spaces inserted
// (JSON still, and the same document).
std::string MutateBytes(std::string bytes, std::mt19937& rng);

// One change to the JSON document, anywhere in its tree: a value swapped
// for one of another type or size, a field dropped, an unknown field
// added. Text that is not JSON comes back unchanged.
std::string MutateJson(const std::string& text, std::mt19937& rng);

// One to four changes of either kind.
std::string Mangle(std::string text, std::mt19937& rng);

}  // namespace pp::test
