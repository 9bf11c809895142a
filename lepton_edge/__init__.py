"""lepton-edge: convert, plan, sign, ship and run ML models on microcontrollers and small Linux boards."""

__version__ = "0.1.0"
