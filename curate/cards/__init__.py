"""Data cards, HTML reports, plots and Hugging Face publishing."""
