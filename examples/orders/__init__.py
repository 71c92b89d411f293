"""An e-commerce order flow: reserve stock, take payment, ship; compensate on failure."""
