// Logging: spdlog to stderr, one line per event, with the component name.
// Call InitLogging once in main(); library code then uses spdlog::info etc.
// Keys and certificates are never logged.
#pragma once

#include <string>

#include "attune/common/status.h"

namespace attune {

// level: "debug", "info", "warn", "error". InvalidArgument for anything else.
Status InitLogging(const std::string& component, const std::string& level);

}  // namespace attune
