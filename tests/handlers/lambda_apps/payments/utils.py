WHO = "payments-utils"
