WHO = "lazy_a"
