# qemu-m7: QEMU mps2-an500 (Cortex-M7), CMSIS-NN kernels. Plays the stm32h743 profile: its arena
# RAM (int(512 KB * 0.9)) and a slot of 1.5 MB (its flash budget).
include $(BOARD_DIR)/common.mk
ARCH_FLAGS := $(CORTEX_M7_FLAGS)
LDSCRIPT := $(BOARD_DIR)/mps2-an500.ld
PROFILE := stm32h743
ARENA_RAM_BYTES := 471859
SLOT_BYTES := 1572864
