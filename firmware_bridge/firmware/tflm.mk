# TFLite Micro sources the firmware links (debug_log, micro_log, micro_tensor_utils and the
# planner shim are left out: with TF_LITE_STRIP_ERROR_STRINGS and no LSTM/SVDF nothing calls them): the interpreter core and the kernels of core/ops.h,
# nothing else (an explicit list, not TFLM's 120 kernels). Included by the Makefile, which sets
# TFLM_DIR and KERNELS (reference | cmsis_nn).

TFLM_DOWNLOADS := $(TFLM_DIR)/tensorflow/lite/micro/tools/make/downloads
TFLM_MICRO := tensorflow/lite/micro

TFLM_CORE_SRCS := \
  $(TFLM_MICRO)/flatbuffer_utils.cc \
  $(TFLM_MICRO)/memory_helpers.cc \
  $(TFLM_MICRO)/micro_allocation_info.cc \
  $(TFLM_MICRO)/micro_allocator.cc \
  $(TFLM_MICRO)/micro_context.cc \
  $(TFLM_MICRO)/micro_interpreter.cc \
  $(TFLM_MICRO)/micro_interpreter_context.cc \
  $(TFLM_MICRO)/micro_interpreter_graph.cc \
  $(TFLM_MICRO)/micro_op_resolver.cc \
  $(TFLM_MICRO)/micro_resource_variable.cc \
  $(TFLM_MICRO)/micro_utils.cc \
  $(TFLM_MICRO)/arena_allocator/non_persistent_arena_buffer_allocator.cc \
  $(TFLM_MICRO)/arena_allocator/persistent_arena_buffer_allocator.cc \
  $(TFLM_MICRO)/arena_allocator/single_arena_buffer_allocator.cc \
  $(TFLM_MICRO)/memory_planner/greedy_memory_planner.cc \
  $(TFLM_MICRO)/memory_planner/linear_memory_planner.cc \
  $(TFLM_MICRO)/tflite_bridge/flatbuffer_conversions_bridge.cc \
  $(TFLM_MICRO)/tflite_bridge/micro_error_reporter.cc \
  tensorflow/lite/kernels/kernel_util.cc \
  tensorflow/lite/kernels/internal/runtime_shape.cc \
  tensorflow/lite/kernels/internal/portable_tensor_utils.cc \
  tensorflow/lite/kernels/internal/tensor_ctypes.cc \
  tensorflow/lite/kernels/internal/reference/portable_tensor_utils.cc \
  tensorflow/lite/kernels/internal/common.cc \
  tensorflow/lite/kernels/internal/quantization_util.cc \
  tensorflow/lite/kernels/internal/tensor_utils.cc \
  tensorflow/lite/core/api/flatbuffer_conversions.cc \
  tensorflow/lite/core/api/tensor_utils.cc \
  tensorflow/lite/core/c/common.cc \
  tensorflow/compiler/mlir/lite/schema/schema_utils.cc \
  tensorflow/compiler/mlir/lite/core/api/error_reporter.cc

# Kernels of core/ops.h (file stems under kernels/), their *_common.cc and the shared helpers.
TFLM_KERNELS := activations add concatenation conv depthwise_conv dequantize expand_dims \
  fully_connected hard_swish leaky_relu logistic maximum_minimum pooling reduce mul pad pack \
  quantize reshape shape softmax squeeze strided_slice sub tanh transpose unpack
TFLM_KERNEL_COMMON := activations_common add_common conv_common depthwise_conv_common \
  dequantize_common fully_connected_common hard_swish_common leaky_relu_common logistic_common \
  pooling_common reduce_common mul_common pad_common quantize_common reshape_common \
  softmax_common strided_slice_common sub_common transpose_common kernel_util

# Kernels CMSIS-NN replaces (kernels/cmsis_nn/<stem>.cc instead of kernels/<stem>.cc).
TFLM_CMSIS_NN_KERNELS := add conv depthwise_conv fully_connected maximum_minimum mul pad pooling \
  softmax transpose

ifeq ($(KERNELS),cmsis_nn)
TFLM_OPT_KERNELS := $(filter $(TFLM_CMSIS_NN_KERNELS),$(TFLM_KERNELS))
TFLM_REF_KERNELS := $(filter-out $(TFLM_CMSIS_NN_KERNELS),$(TFLM_KERNELS))
TFLM_KERNEL_SRCS := $(TFLM_OPT_KERNELS:%=$(TFLM_MICRO)/kernels/cmsis_nn/%.cc) \
  $(TFLM_REF_KERNELS:%=$(TFLM_MICRO)/kernels/%.cc)
CMSIS_NN_DIR := $(TFLM_DOWNLOADS)/cmsis_nn
# CMSIS-NN's C sources (int8/int16 kernels and their support functions), compiled as C; the
# float ones are left out as TFLM's ext_libs/cmsis_nn.inc leaves them out with F16/F32 disabled.
TFLM_C_SRCS := $(filter-out %_f16.c %_f32.c %/arm_nntables_flt.c,\
  $(patsubst $(TFLM_DIR)/%,%,$(sort $(wildcard $(CMSIS_NN_DIR)/Source/*/*.c))))
TFLM_DEFINES += -DCMSIS_NN -DARM_NN_ENABLE_F16=0 -DARM_NN_ENABLE_F32=0
TFLM_INCLUDES += -I$(TFLM_DOWNLOADS)/cmsis/CMSIS/Core/Include -I$(CMSIS_NN_DIR) -I$(CMSIS_NN_DIR)/Include
else
TFLM_KERNEL_SRCS := $(TFLM_KERNELS:%=$(TFLM_MICRO)/kernels/%.cc)
TFLM_C_SRCS :=
endif
TFLM_KERNEL_SRCS += $(TFLM_KERNEL_COMMON:%=$(TFLM_MICRO)/kernels/%.cc)

# TFLite Micro's signal library for the preprocessing front end (core/preprocess/audio.cc): its float
# real FFT (kissfft, wrapped in a namespace; TFLM's patched kissfft never allocates). The linker keeps
# them only when the firmware calls the front end.
TFLM_SIGNAL_SRCS := signal/src/rfft_float.cc signal/src/kiss_fft_wrappers/kiss_fft_float.cc

TFLM_SRCS := $(TFLM_CORE_SRCS) $(TFLM_KERNEL_SRCS) $(TFLM_SIGNAL_SRCS)
TFLM_INCLUDES += -I$(TFLM_DIR) -I$(TFLM_DOWNLOADS)/flatbuffers/include -I$(TFLM_DOWNLOADS)/gemmlowp \
  -I$(TFLM_DOWNLOADS)/ruy -I$(TFLM_DOWNLOADS)/kissfft
TFLM_DEFINES += -DTF_LITE_STATIC_MEMORY -DTF_LITE_STRIP_ERROR_STRINGS -DTF_LITE_MCU_DEBUG_LOG -DNDEBUG
