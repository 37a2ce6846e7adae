"""OTP-style supervision of operating-system processes."""
