"""Firmware updates: take a job, download it, hand it to SWUpdate, reboot, verify."""
