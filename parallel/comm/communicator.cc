#include "parallel/comm/communicator.h"

namespace tessera::parallel {

bool IsReducible(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
    case DataType::kF16:
    case DataType::kBF16:
    case DataType::kI32:
    case DataType::kI64:
      return true;
    case DataType::kI8:
      return false;
  }
  return false;
}

absl::string_view ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

}  // namespace tessera::parallel
