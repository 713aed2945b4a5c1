// The operators' dashboard (cloud-hub/dashboard/), compiled into pp-hub.
#pragma once

#include "common/ui_asset.h"

namespace pp::dashboard {

const std::vector<UiAsset>& Assets();

}  // namespace pp::dashboard
