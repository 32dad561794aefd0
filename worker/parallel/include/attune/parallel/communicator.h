// The seam between data-parallel training and its transport: a Communicator
// runs collectives over the ranks of one job (one site's processes, or a
// cluster's); the gradient reducer and the trainer depend on it, never on
// MPI or NCCL. Implementations:
//   MakeLocalCommunicator()  one process (size 1): every collective is done
//                            when issued
//   MpiCommunicator          Open MPI, CPU tensors (mpi_communicator.h; built
//                            when MPI is found)
//   NcclCommunicator         CUDA tensors (nccl_communicator.h; its own
//                            target, built only with the CUDA toolkit and NCCL)
//
// Every collective is asynchronous: it returns a Work handle, and
// Wait(timeout) blocks until the collective completes. When it fails, or the
// deadline passes, Wait throws CollectiveError naming the backend, the
// collective, its sequence number and the ranks — never a silent hang. After
// an error the communicator is broken (its peers can no longer be trusted to
// be in step): every later collective throws the same error.
//
// All ranks must issue the same collectives in the same order, as in MPI.
// Like LibTorch itself this library throws; worker code turns the exception
// into a Status at its edge. Thread-compatible: one thread issues and waits
// (the autograd hooks of the reducer run on the thread calling backward()).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace attune::parallel {

class CollectiveError : public std::runtime_error {
 public:
  enum class Kind {
    kTimeout,  // the deadline passed: a peer rank died or is stuck
    kFailed,   // the transport reported an error
    kInvalid,  // a bad argument (dtype, device, root), a bug of the caller
  };
  CollectiveError(Kind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

enum class ReduceOp { kSum, kMin, kMax };

class Work {
 public:
  virtual ~Work() = default;
  // Non-blocking; drives the transport's progress. Throws on error.
  virtual bool IsCompleted() = 0;
  // Blocks until done; throws CollectiveError on error or after `timeout`.
  virtual void Wait(std::chrono::milliseconds timeout) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend() const = 0;  // "local", "mpi", "nccl"

  // In place over all ranks. `t` must be contiguous and stay alive, untouched,
  // until the work completes. `what` names the collective in errors
  // ("gradient bucket 3").
  virtual std::unique_ptr<Work> AllReduce(torch::Tensor& t, ReduceOp op,
                                          std::string_view what) = 0;
  // Rank `root`'s `t` to every rank (same shape and dtype everywhere).
  virtual std::unique_ptr<Work> Broadcast(torch::Tensor& t, int root, std::string_view what) = 0;
  virtual std::unique_ptr<Work> Barrier(std::string_view what) = 0;
};

// A single process: size 1, rank 0; collectives complete at once.
std::unique_ptr<Communicator> MakeLocalCommunicator();

// "3.2 MiB float32" — for messages.
std::string DescribeTensor(const torch::Tensor& t);

}  // namespace attune::parallel
