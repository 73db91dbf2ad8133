"""The ground floor: typed options and their flags, the runtime (device, precision, processes),
run directories and atomic writes, progress, errors, tables and plots. Imports nothing else of fixres."""
