"""Examples of extending clinical_r1 from outside its core: user rewards (:mod:`clinical_r1.examples.rewards`)."""
