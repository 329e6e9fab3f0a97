"""Launching vsim: the cluster spec, the engines that realise it (Ray or in-process),
the SDK client and the `vsim` CLI."""
