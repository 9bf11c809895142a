# The GNU Arm Embedded toolchain (Debian's gcc-arm-none-eabi with newlib-nano) and what every
# Cortex-M port shares: CMSIS-NN kernels, an ELF, the C/C++ run-time hooks of runtime.cc.
CC := arm-none-eabi-gcc
CXX := arm-none-eabi-g++
AR := arm-none-eabi-ar
SIZE := arm-none-eabi-size
KERNELS := cmsis_nn
EXE := firmware.elf
CORTEX_M_SRCS := ../cortex-m/runtime.cc
# Cortex-M4F with its single-precision FPU (qemu-m4 and nucleo-l4r5zi: one TFLM library for both).
CORTEX_M4F_FLAGS := -mthumb -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard
CORTEX_M7_FLAGS := -mthumb -mcpu=cortex-m7 -mfpu=fpv5-sp-d16 -mfloat-abi=hard
