// The dataset readers, one per file (private to the importers library).
#pragma once

#include "cohort.h"

namespace attune::importers {

StatusOr<Cohort> ReadTcgaGlioma(const ImportOptions& options, ImportReport* report);
StatusOr<Cohort> ReadMimicIvDemo(const ImportOptions& options, ImportReport* report);
StatusOr<Cohort> ReadNihChestXray(const ImportOptions& options, ImportReport* report);
StatusOr<Cohort> ReadPneumoniaMnist(const ImportOptions& options, ImportReport* report);

}  // namespace attune::importers
