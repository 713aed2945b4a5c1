// A file of a web UI compiled into a binary (cmake/embed_assets.cmake), so
// that pages are served with no network and no install step.
#pragma once

#include <string_view>
#include <vector>

namespace pp {

struct UiAsset {
  std::string_view name;  // "index.html", "app.js", ...
  std::string_view content_type;
  std::string_view body;
};

}  // namespace pp
