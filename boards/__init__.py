"""Board targets: top-levels, synthesis with YoWASP tools, reports, host protocol."""
