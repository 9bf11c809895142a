# qemu-m4: QEMU mps2-an386 (Cortex-M4F), CMSIS-NN kernels. Plays the stm32l4r5 profile: its arena
# RAM (640 KB * 0.75) and a slot of its flash budget (2 MB * 0.75).
# Same compiler flags as boards/nucleo-l4r5zi, so both can link one TFLM library build.
CC := arm-none-eabi-gcc
CXX := arm-none-eabi-g++
AR := arm-none-eabi-ar
SIZE := arm-none-eabi-size
ARCH_FLAGS := -mthumb -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard
KERNELS := cmsis_nn
BOARD_SRCS := startup.cc semihost.cc board_qemu.cc
LDSCRIPT := $(BOARD_DIR)/mps2-an386.ld
BOARD_LDFLAGS := -L$(BOARD_DIR) -nostartfiles
PROFILE := stm32l4r5
ARENA_RAM_BYTES := 491520
SLOT_BYTES := 1572864
MAX_PAYLOAD := 4096
WINDOW := 8
EXE := firmware.elf
