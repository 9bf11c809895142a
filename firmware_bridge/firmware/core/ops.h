// THE operator list of the firmware: one line per TFLite builtin operator, as
// X(BUILTIN_NAME, MicroMutableOpResolverMethod). lepton_edge/runtime/op_support.py reads
// this file to know which operators the `tflm` profiles run. No IF, WHILE or LSTM.
#pragma once

#define LEPTON_OPS(X)                 \
  X(ADD, AddAdd)                         \
  X(AVERAGE_POOL_2D, AddAveragePool2D)   \
  X(CONCATENATION, AddConcatenation)     \
  X(CONV_2D, AddConv2D)                  \
  X(DEPTHWISE_CONV_2D, AddDepthwiseConv2D) \
  X(DEQUANTIZE, AddDequantize)           \
  X(EXPAND_DIMS, AddExpandDims)          \
  X(FULLY_CONNECTED, AddFullyConnected)  \
  X(HARD_SWISH, AddHardSwish)            \
  X(LEAKY_RELU, AddLeakyRelu)            \
  X(LOGISTIC, AddLogistic)               \
  X(MAXIMUM, AddMaximum)                 \
  X(MAX_POOL_2D, AddMaxPool2D)           \
  X(MEAN, AddMean)                       \
  X(MINIMUM, AddMinimum)                 \
  X(MUL, AddMul)                         \
  X(PAD, AddPad)                         \
  X(PADV2, AddPadV2)                     \
  X(PACK, AddPack)                       \
  X(QUANTIZE, AddQuantize)               \
  X(RELU, AddRelu)                       \
  X(RELU6, AddRelu6)                     \
  X(RESHAPE, AddReshape)                 \
  X(SHAPE, AddShape)                     \
  X(SOFTMAX, AddSoftmax)                 \
  X(SQUEEZE, AddSqueeze)                 \
  X(STRIDED_SLICE, AddStridedSlice)      \
  X(SUB, AddSub)                         \
  X(TANH, AddTanh)                       \
  X(TRANSPOSE, AddTranspose)             \
  X(UNPACK, AddUnpack)

#define LEPTON_OPS_COUNT_ONE(name, method) +1
namespace lepton {
constexpr unsigned kOpCount = 0 LEPTON_OPS(LEPTON_OPS_COUNT_ONE);
}  // namespace lepton
#undef LEPTON_OPS_COUNT_ONE
