// Argument names in the bindings' checks are std::string_view: the checks run
// on every call, and a name is only turned into a std::string when a message
// is built (an error). This joins a name to the rest of a message.
#pragma once

#include <string>
#include <string_view>

namespace fusedtrain {
namespace bind {

inline std::string operator+(std::string_view a, std::string_view b) {
  std::string s;
  s.reserve(a.size() + b.size());
  s.append(a);
  s.append(b);
  return s;
}

}  // namespace bind
}  // namespace fusedtrain
