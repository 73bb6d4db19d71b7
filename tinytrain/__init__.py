"""tinytrain: fine-tune CNNs the way a microcontroller would, with every training byte in one arena."""
