"""Physical constants fehkit uses, in the units of its arrays (CODATA 2018 exact values where defined)."""

#: Speed of light in vacuum (km/s), exact by the SI definition of the metre.
SPEED_OF_LIGHT_KMS = 299792.458
