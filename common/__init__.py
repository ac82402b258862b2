"""The bottom layer every package may import: settings, operations endpoints and the QoE
math. It imports nothing of the project's other packages."""
