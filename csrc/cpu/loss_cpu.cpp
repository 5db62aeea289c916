// Loss and dropout loops on the CPU.
