// The local UI's files (edge-agent/ui/), compiled in by cmake/embed_assets.cmake
// so that the agent serves them with no network and no install step.
#pragma once

#include <string_view>
#include <vector>

namespace pp::agent {

struct UiAsset {
  std::string_view name;  // "index.html", "app.js", ...
  std::string_view content_type;
  std::string_view body;
};

const std::vector<UiAsset>& UiAssets();

}  // namespace pp::agent
