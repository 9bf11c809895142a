# qemu-m4: QEMU mps2-an386 (Cortex-M4F), CMSIS-NN kernels. Plays the stm32l4r5 profile: its arena
# RAM (640 KB * 0.75) and a slot of its flash budget (2 MB * 0.75).
# Same compiler flags as boards/nucleo-l4r5zi, so both can link one TFLM library build.
include $(BOARD_DIR)/common.mk
ARCH_FLAGS := $(CORTEX_M4F_FLAGS)
LDSCRIPT := $(BOARD_DIR)/mps2-an386.ld
PROFILE := stm32l4r5
ARENA_RAM_BYTES := 491520
SLOT_BYTES := 1572864
