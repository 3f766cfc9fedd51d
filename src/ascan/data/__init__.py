"""Data sets that work offline: Fashion-MNIST from Debian's package, any ImageFolder tree."""
