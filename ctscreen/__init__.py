"""ctscreen: chest CT screening for COVID-19 pneumonia lesions.

Research use, not for diagnosis.
"""

__version__ = "0.1.0"

#: Shown in every window, burned into every exported image and written in every report.
RESEARCH_NOTICE = "Research use only - not for diagnosis."
