WHO = "lazy_b"
