// Real child processes for integration tests: started with fork/exec, output
// to files, waited on with deadlines through pidfd and inotify events
// (never fixed sleeps or polling), killed on demand
// and on destruction.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace attune::testing {

class Process {
 public:
  // Starts argv[0] with the arguments; stdout and stderr go to `log_path`.
  Process(std::vector<std::string> argv, std::string log_path);
  ~Process();  // SIGKILLs the child if it still runs
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // The exit code once the child exited (128 + signal if killed), waiting up
  // to `timeout`; nullopt if it is still running then.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  void Kill(int signal);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::string log_path_;
};

// Waits until `done` holds or `timeout` passes; returns whether it held.
// `done` is re-checked whenever a file in `dir` is created, written or
// renamed into place (inotify): the conditions tests wait for are files.
bool WaitUntil(const std::string& dir, const std::function<bool()>& done,
               std::chrono::milliseconds timeout);

std::string ReadText(const std::string& path);  // "" if missing

// A TCP port on 127.0.0.1 that was free a moment ago (for a process that
// must listen on an address known before it starts).
int FreeLoopbackPort();

}  // namespace attune::testing
