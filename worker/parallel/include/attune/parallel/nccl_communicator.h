// The NCCL communicator: CUDA tensors, one GPU per rank. Built only when
// CMake finds the CUDA toolkit and NCCL (target attune_parallel_nccl,
// ATTUNE_HAVE_NCCL); nothing needs a GPU at run time unless it is used.
//
// The ranks agree on NCCL's unique id through a bootstrap communicator (MPI:
// rank 0 makes the id and broadcasts it). Collectives run on the
// communicator's own CUDA stream, after the work already queued on the
// default stream; Wait() polls the collective's event and NCCL's
// asynchronous error. At the deadline the NCCL communicator is aborted and
// CollectiveError names the collective and the ranks: where a bare NCCL job
// hangs with no message, this one fails with one. Set NCCL_SOCKET_IFNAME (lo
// on one machine) where the default interface is not the ranks' network.
#pragma once

#include <memory>

#include "attune/parallel/communicator.h"

namespace attune::parallel {

// GPUs visible to this process; 0 without a GPU or a driver (never throws).
int CudaDeviceCount();

// Throws CollectiveError when CUDA or NCCL fail. `bootstrap` is used only here.
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap, int device);

}  // namespace attune::parallel
