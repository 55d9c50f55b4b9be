"""The run machinery: one run end to end, its record, and the queue, scheduler, workers (local or Ray), grids and history around it."""
