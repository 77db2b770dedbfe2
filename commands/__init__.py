"""Thin Typer commands over the pipeline and library functions: the top floor."""
