# qemu-m7: QEMU mps2-an500 (Cortex-M7), CMSIS-NN kernels. Plays the stm32h743 profile: its arena
# RAM (int(512 KB * 0.9)) and a slot of 1.5 MB (its flash budget).
CC := arm-none-eabi-gcc
CXX := arm-none-eabi-g++
AR := arm-none-eabi-ar
SIZE := arm-none-eabi-size
ARCH_FLAGS := -mthumb -mcpu=cortex-m7 -mfpu=fpv5-sp-d16 -mfloat-abi=hard
KERNELS := cmsis_nn
BOARD_SRCS := startup.cc semihost.cc board_qemu.cc
LDSCRIPT := $(BOARD_DIR)/mps2-an500.ld
BOARD_LDFLAGS := -L$(BOARD_DIR) -nostartfiles
PROFILE := stm32h743
ARENA_RAM_BYTES := 471859
SLOT_BYTES := 1572864
MAX_PAYLOAD := 4096
WINDOW := 8
EXE := firmware.elf
