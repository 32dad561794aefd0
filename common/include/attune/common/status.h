// Status at boundaries: every recoverable failure that crosses a module or
// RPC boundary is an absl::Status / absl::StatusOr<T>. Broken invariants are
// bugs and use ATTUNE_CHECK instead.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attune {

using Status = absl::Status;
template <typename T>
using StatusOr = absl::StatusOr<T>;

}  // namespace attune

#define ATTUNE_STATUS_CONCAT_INNER_(a, b) a##b
#define ATTUNE_STATUS_CONCAT_(a, b) ATTUNE_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define ATTUNE_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    if (::attune::Status _attune_s = (expr); !_attune_s.ok()) \
      return _attune_s;                              \
  } while (0)

// `ATTUNE_ASSIGN_OR_RETURN(auto x, Foo());` assigns the value of a StatusOr or
// returns its status.
#define ATTUNE_ASSIGN_OR_RETURN(lhs, rexpr)                                  \
  ATTUNE_ASSIGN_OR_RETURN_IMPL_(ATTUNE_STATUS_CONCAT_(_attune_so_, __LINE__), \
                                lhs, rexpr)
#define ATTUNE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

// Invariant check: a failure is a bug in Attune, not bad input.
#define ATTUNE_CHECK(cond)                                                  \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "%s:%d: ATTUNE_CHECK failed: %s\n", __FILE__,    \
                   __LINE__, #cond);                                        \
      std::abort();                                                         \
    }                                                                       \
  } while (0)
