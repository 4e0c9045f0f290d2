"""The dashboard: its pages in process, and in a real browser against real servers."""
