"""Developer tools outside the shipped service: demo model builds and checkpoint converters."""
