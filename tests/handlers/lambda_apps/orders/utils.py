WHO = "orders-utils"
