// The Open MPI communicator: CPU tensors, non-blocking MPI collectives
// (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) on a private duplicate of
// MPI_COMM_WORLD whose errors are returned, not fatal. Wait() drives MPI's
// progress until the collective completes or its deadline passes.
//
// MPI is initialised (MPI_THREAD_SERIALIZED: every MPI call of this process
// goes through one communicator's lock) by the first communicator and
// finalised when it is destroyed, unless something else initialised it.
// Initialising it, it makes Open MPI's non-blocking all-reduce use
// reduce-scatter + all-gather (OMPI_MCA_coll_libnbc_iallreduce_algorithm=3)
// unless that variable is already set: the default for 2-3 ranks and
// in-place buffers is a binomial tree 2-3x slower.
// Built only when CMake finds MPI (ATTUNE_HAVE_MPI).
//
// A rank that dies: Open MPI's mpirun ends the job and names the rank. A rank
// that stops answering (stuck, stopped, or dead under a launcher that does
// not end the job) makes the others' collectives time out with an error
// naming the collective, its sequence number, the waiting rank and the world.
#pragma once

#include <memory>

#include "attune/parallel/communicator.h"

namespace attune::parallel {

// True when a launcher (mpirun, mpiexec, srun with PMI) started this process
// as one of several ranks — read from the environment, without touching MPI.
bool LaunchedAsMpiRanks();

// Throws CollectiveError when MPI cannot be initialised.
std::unique_ptr<Communicator> MakeMpiCommunicator();

}  // namespace attune::parallel
