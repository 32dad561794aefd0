#include "attune/common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace attune {

Status InitLogging(const std::string& component, const std::string& level) {
  spdlog::level::level_enum lvl;
  if (level == "debug") lvl = spdlog::level::debug;
  else if (level == "info") lvl = spdlog::level::info;
  else if (level == "warn") lvl = spdlog::level::warn;
  else if (level == "error") lvl = spdlog::level::err;
  else return absl::InvalidArgumentError("--log-level: use debug, info, warn or error");
  auto logger = spdlog::stderr_color_mt(component);
  logger->set_pattern("%H:%M:%S.%e %n %^%l%$ %v");
  logger->set_level(lvl);
  spdlog::set_default_logger(logger);
  return absl::OkStatus();
}

}  // namespace attune
