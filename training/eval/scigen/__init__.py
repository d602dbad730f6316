"""SciGenBench's evaluation of generated scientific images: its records (``data``), the
judge's quizzes and rubric per image (``judging``), PSNR/SSIM/CLIP/FID (``metrics``), the
numbers and tables (``summary``), and the whole run behind ``science-t2i eval-scigen``
(``run``)."""
