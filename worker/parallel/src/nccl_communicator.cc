#include "attune/parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>

#include "poll.h"

namespace attune::parallel {
namespace {

using Kind = CollectiveError::Kind;

void CudaCheck(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) throw CollectiveError(Kind::kFailed, what + ": " + cudaGetErrorString(rc));
}

void NcclCheck(ncclResult_t rc, const std::string& what) {
  if (rc != ncclSuccess) throw CollectiveError(Kind::kFailed, what + ": " + ncclGetErrorString(rc));
}

ncclDataType_t ToNccl(const torch::Tensor& t, const std::string& what) {
  switch (t.scalar_type()) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kHalf: return ncclFloat16;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
    case torch::kBFloat16: return ncclBfloat16;
#endif
    case torch::kLong: return ncclInt64;
    case torch::kInt: return ncclInt32;
    case torch::kByte: return ncclUint8;
    case torch::kChar: return ncclInt8;
    default:
      throw CollectiveError(Kind::kInvalid, what + ": NCCL cannot carry " + DescribeTensor(t));
  }
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
  }
  return ncclSum;
}

class NcclCommunicator;

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator* comm, cudaEvent_t done, std::string what)
      : comm_(comm), done_(done), what_(std::move(what)) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  bool IsCompleted() override;
  void Wait(std::chrono::milliseconds timeout) override;

 private:
  NcclCommunicator* comm_;
  cudaEvent_t done_;
  std::string what_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, int device)
      : rank_(bootstrap.rank()), size_(bootstrap.size()), device_(device) {
    CudaCheck(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
    ncclUniqueId id;
    torch::Tensor bytes = torch::zeros({static_cast<int64_t>(sizeof id)}, torch::kByte);
    if (rank_ == 0) {
      NcclCheck(ncclGetUniqueId(&id), "ncclGetUniqueId");
      std::memcpy(bytes.data_ptr(), &id, sizeof id);
    }
    bootstrap.Broadcast(bytes, 0, "NCCL unique id")->Wait(std::chrono::minutes(2));
    std::memcpy(&id, bytes.data_ptr(), sizeof id);
    NcclCheck(ncclCommInitRank(&comm_, size_, id, rank_),
              "ncclCommInitRank (rank " + std::to_string(rank_) + " of " +
                  std::to_string(size_) + ")");
    CudaCheck(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }

  ~NcclCommunicator() override {
    if (!aborted_) ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "nccl"; }

  std::unique_ptr<Work> AllReduce(torch::Tensor& t, ReduceOp op, std::string_view what) override {
    const std::string name = Name("all-reduce", what, t);
    Check(t, name);
    return Launch(name, [&] {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), ToNccl(t, name), ToNccl(op),
                           comm_, stream_);
    });
  }

  std::unique_ptr<Work> Broadcast(torch::Tensor& t, int root, std::string_view what) override {
    const std::string name = Name("broadcast", what, t);
    Check(t, name);
    if (root < 0 || root >= size_) {
      throw CollectiveError(Kind::kInvalid, name + ": root " + std::to_string(root) +
                                                " is not a rank of " + std::to_string(size_));
    }
    return Launch(name, [&] {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), ToNccl(t, name), root, comm_,
                           stream_);
    });
  }

  std::unique_ptr<Work> Barrier(std::string_view what) override {
    if (!barrier_.defined()) {
      barrier_ = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(
                                       torch::Device(torch::kCUDA, device_)));
    }
    return AllReduce(barrier_, ReduceOp::kSum, what);
  }

  bool Poll(cudaEvent_t done, const std::string& what) {
    ThrowIfBroken();
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess) Break(Kind::kFailed, what + " failed: " + ncclGetErrorString(async));
    const cudaError_t rc = cudaEventQuery(done);
    if (rc == cudaSuccess) return true;
    if (rc != cudaErrorNotReady) Break(Kind::kFailed, what + " failed: " + cudaGetErrorString(rc));
    return false;
  }

  [[noreturn]] void TimedOut(const std::string& what, std::chrono::milliseconds timeout) {
    Break(Kind::kTimeout,
          TimeoutMessage(what, timeout, rank_, size_) + "; the NCCL communicator was aborted");
  }

 private:
  std::string Name(const char* kind, std::string_view what, const torch::Tensor& t) {
    return std::string("NCCL ") + kind + " '" + std::string(what) + "' (#" +
           std::to_string(sequence_ + 1) + ", " + DescribeTensor(t) + ")";
  }

  void Check(const torch::Tensor& t, const std::string& name) {
    if (!t.defined() || !t.is_cuda() || !t.is_contiguous()) {
      throw CollectiveError(Kind::kInvalid, name + ": needs a defined, contiguous CUDA tensor");
    }
  }

  template <typename Start>
  std::unique_ptr<Work> Launch(const std::string& name, Start start) {
    ThrowIfBroken();
    ++sequence_;
    // After the work queued so far on the default stream (which made `t`).
    cudaEvent_t ready = nullptr, done = nullptr;
    CudaCheck(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), name);
    CudaCheck(cudaEventRecord(ready, cudaStreamLegacy), name);
    CudaCheck(cudaStreamWaitEvent(stream_, ready, 0), name);
    cudaEventDestroy(ready);
    const ncclResult_t rc = start();
    if (rc != ncclSuccess) Break(Kind::kFailed, name + " could not start: " + ncclGetErrorString(rc));
    CudaCheck(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), name);
    CudaCheck(cudaEventRecord(done, stream_), name);
    // Later work on the default stream waits for the collective.
    CudaCheck(cudaStreamWaitEvent(cudaStreamLegacy, done, 0), name);
    return std::make_unique<NcclWork>(this, done, name);
  }

  void ThrowIfBroken() {
    if (!broken_.empty()) {
      throw CollectiveError(broken_kind_, "communicator broken by an earlier error: " + broken_);
    }
  }
  [[noreturn]] void Break(Kind kind, const std::string& message) {
    if (!aborted_) {
      ncclCommAbort(comm_);
      aborted_ = true;
    }
    broken_ = message;
    broken_kind_ = kind;
    throw CollectiveError(kind, message);
  }

  int rank_, size_, device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  torch::Tensor barrier_;
  uint64_t sequence_ = 0;
  std::string broken_;
  Kind broken_kind_ = Kind::kFailed;
  bool aborted_ = false;
};

bool NcclWork::IsCompleted() { return comm_->Poll(done_, what_); }

void NcclWork::Wait(std::chrono::milliseconds timeout) {
  PollUntil(timeout, [&] { return IsCompleted(); }, [&] { comm_->TimedOut(what_, timeout); });
}

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;  // leaves n unwritten on some errors
  return n;
}

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap, int device) {
  return std::make_unique<NcclCommunicator>(bootstrap, device);
}

}  // namespace attune::parallel
