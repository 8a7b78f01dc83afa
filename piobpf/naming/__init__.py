"""Naming: what each key is called. A port's device from the VM's own
device model (QEMU's monitor, asked read-only in background threads) or
from an ioports table; a VM's name and its vCPUs' from the process. Imports
core only; knows nothing of the kernel layer, whose results it is handed."""
