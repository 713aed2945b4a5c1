// The agent's local UI (edge-agent/ui/), compiled in.
#pragma once

#include "common/ui_asset.h"

namespace pp::agent {

const std::vector<UiAsset>& UiAssets();

}  // namespace pp::agent
