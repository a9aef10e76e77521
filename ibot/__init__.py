"""iBOT core: backbone, head, loss, masking, multi-crop, schedules and checkpoint formats."""
